"""FastAPI detection service: validates, enqueues and answers; never imports torch."""
