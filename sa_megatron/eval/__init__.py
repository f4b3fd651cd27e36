"""Evaluation of trained models: perplexity at several context lengths, and text generation."""
