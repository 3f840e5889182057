"""NormLab: every normalization method in one framework, instrumented training runs."""
