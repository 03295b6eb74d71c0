"""Downloads into a cache that never holds a file that looks valid and is not.

A download streams into `<file>.partial.<pid>` beside its destination, hashing as it goes; only
a transfer that is complete (as long as the server said) and matches the expected sha256 is
renamed onto the destination, in one atomic `os.replace`. Anything else deletes the partial file
and raises. A cached file is re-hashed before use.
"""

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request

from tqdm import tqdm

CACHE_ENV = "JRESNET_CACHE"
TIMEOUT_S = 8.0  # connect and per-read; offline machines fail well within 10 s


class WeightsUnavailableError(OSError):
  """The file is neither in the cache nor downloadable; the message says where to put it."""


class ChecksumError(ValueError):
  pass


def cache_dir(override: str | None = None) -> str:
  """`override`, else $JRESNET_CACHE, else ~/.cache/jresnet/weights."""
  path = override or os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "jresnet",
                                                                "weights")
  return os.path.abspath(os.path.expanduser(path))


def sha256_of(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _matches(digest: str, expected: str | None) -> bool:
  return expected is None or digest.startswith(expected.lower())


def fetch(url: str, file_name: str, sha256: str | None, directory: str | None = None,
          progress: bool = True) -> str:
  """The path of `file_name` in the cache, downloaded from `url` if it is not there yet.

  `sha256` is the expected hex digest or a prefix of it (None: not checked, logged).
  """
  directory = cache_dir(directory)
  path = os.path.join(directory, file_name)
  if os.path.exists(path):
    digest = sha256_of(path)
    if _matches(digest, sha256):
      return path
    raise ChecksumError(f"{path} has sha256 {digest}, expected {sha256}...; delete it to "
                        "download it again")
  os.makedirs(directory, exist_ok=True)
  partial = f"{path}.partial.{os.getpid()}"
  try:
    digest = _download(url, partial, progress)
    if not _matches(digest, sha256):
      raise ChecksumError(f"{url} downloaded with sha256 {digest}, expected {sha256}...; "
                          "nothing was kept")
    os.replace(partial, path)
  except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
    raise WeightsUnavailableError(
        f"could not download {url} ({getattr(e, 'reason', e)}). Without network, download it "
        f"elsewhere and place it at {path}" + (f" (sha256 {sha256}...)" if sha256 else "")
        + f", or set ${CACHE_ENV} to a directory that holds {file_name}.") from e
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  if sha256 is None:
    logging.warning("%s has no recorded sha256; downloaded file's sha256 is %s", url, digest)
  return path


def _download(url: str, destination: str, progress: bool) -> str:
  """Streams `url` to `destination`; the sha256 of what arrived. Raises on a short transfer."""
  digest = hashlib.sha256()
  with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, \
       open(destination, "wb") as out:
    size = response.headers.get("Content-Length")
    size = int(size) if size else None
    received = 0
    with tqdm(total=size, unit="B", unit_scale=True, desc=os.path.basename(url),
              disable=not progress) as bar:
      for chunk in iter(lambda: response.read(1 << 20), b""):
        out.write(chunk)
        digest.update(chunk)
        received += len(chunk)
        bar.update(len(chunk))
  if size is not None and received != size:
    raise OSError(f"transfer interrupted: {received} of {size} bytes")
  return digest.hexdigest()
