"""python -m tests.e2e.serve MODULE:APP PORT: uvicorn with stabilizer's server options."""

import logging
import sys

import uvicorn

from stabilizer import WebSocketConfig
from stabilizer.fastapi import uvicorn_options

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
app_path, port = sys.argv[1], int(sys.argv[2])
uvicorn.run(app_path, host="127.0.0.1", port=port, log_level="warning",
            **uvicorn_options(WebSocketConfig.from_env()))
