"""python -m examples.chat [--host H] [--port P]: serve the chat example with uvicorn."""

import argparse
import os

from stabilizer.fastapi import run

from .app import app, manager

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
args = parser.parse_args()
run(app, manager, host=args.host, port=args.port)  # applies compression and the frame cap
