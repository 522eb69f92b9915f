"""Model loading and building: tiny local models for tests, the default SmolLM2 from its package."""
