"""mudelta.derive: the engine."""
