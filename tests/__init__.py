"""The test tiers, one package each, so every conftest.py has a module name of its own."""
