"""Knowledge: documents, folders and their chunks, kept apart from memories."""
