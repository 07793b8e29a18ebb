"""Exit 0 when the Redis at argv[1] answers PING (retrying for --wait seconds), else 1."""

import sys
import time

import redis

url = sys.argv[1]
deadline = time.monotonic() + (float(sys.argv[3]) if sys.argv[2:3] == ["--wait"] else 0)
while True:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping()
        sys.exit(0)
    except redis.RedisError:
        if time.monotonic() >= deadline:
            sys.exit(1)
        time.sleep(0.1)
