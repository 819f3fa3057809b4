"""The SmoLoRA web UI: Train, Data, Runs, Chat, Export and Models views in the browser.

A FastAPI app (`app.py`) serving a small hand-written front end (`static/`: HTML, JS, CSS,
no build step, nothing fetched from the network). It is a client of the same config and
the same CLI as the terminal: training runs `smolora train CONFIG` as a subprocess, queued
on the workspace's job queue (`queued.py`, the database `smolora jobs` reads).

Run as:
    smolora ui --port 7860 --workspace .
"""

from smolora.ui.app import create_app

__all__ = ["create_app"]
