"""Package data: label maps and class-order tables."""
