import os
import tempfile

# Keep compiled kernels of the test run out of the user's cache.
os.environ.setdefault("MOBA_CACHE_DIR",
                      tempfile.mkdtemp(prefix="moba-test-cache-"))
