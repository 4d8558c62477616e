"""The scene reader: a small LLaVA trained here on generated scenes, so that visual-token pruning's
effect on answers can be measured (issue 13)."""
