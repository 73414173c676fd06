"""The REST API: FastAPI routes over the catalog and the submitter the composition root hands in."""
