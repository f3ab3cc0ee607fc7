"""The Dagster layer, stage by stage: each module builds its stage's assets and checks from its settings."""
