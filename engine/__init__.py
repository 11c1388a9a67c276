"""inferis engine."""
