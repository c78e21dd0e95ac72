"""PerceptionGPT demo: ``python app.py [--model tiny|PATH|hub-id] [--device auto|cpu|cuda]``."""

from app import main

if __name__ == "__main__":
    main()
