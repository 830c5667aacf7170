"""The development harness: a private broker + web service + endpoint stack for tests, benches
and `make demo`. Not part of the product packages (never installed in an image)."""
