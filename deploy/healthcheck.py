"""The image's HEALTHCHECK: GET /health/ready on this container's $PORT (stdlib only)."""

import http.client
import os
import sys
import urllib.request


def main():
    url = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except (OSError, http.client.HTTPException):  # refused, timed out, an error status, garbled
        return 1


if __name__ == "__main__":
    sys.exit(main())
