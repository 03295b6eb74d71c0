"""Downloads into a cache that never holds a file that looks valid and is not.

A download streams into `<file>.partial.<pid>` beside its destination, hashing as it goes; only
a transfer that is complete (as long as the server said) and matches the expected sha256 is
renamed onto the destination, in one atomic `os.replace`. Anything else deletes the partial file
and raises. A cached file is re-hashed before use; one that does not match (or, see
`jresnet.weights`, does not load) is moved aside to `<file>.corrupt` (one per file: a later
one replaces it), so the next call downloads it again. Where no sha256 is on record, the digest
of the first file that loads (and fits its architecture) is recorded in `<file>.sha256` and
checked from then on.
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


class CorruptWeightsError(ValueError):
  """A weights file that does not load or does not match its digest; it was moved aside."""


class ChecksumError(CorruptWeightsError):
  pass


class UnreadableWeightsError(ValueError):
  """A weights file that its reader (safetensors, torch) cannot read; the message names it."""


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


def _digest_record(path: str) -> str:
  return f"{path}.sha256"


def recorded_sha256(path: str) -> str | None:
  """The digest recorded for the cached `path` by `record_sha256`, if any."""
  try:
    with open(_digest_record(path)) as f:
      return f.read().strip() or None
  except FileNotFoundError:
    return None


def record_sha256(path: str) -> None:
  """Records the digest of `path` (a file that loaded) so that later uses are checked."""
  if recorded_sha256(path) is None:
    with open(_digest_record(path), "w") as f:
      f.write(sha256_of(path) + "\n")


def set_aside(path: str) -> str:
  """Moves a bad cached file to `<path>.corrupt`, replacing the one a failed try before put
  there (the newest bad copy is kept for a look; the file can be downloaded again); returns
  where."""
  aside = f"{path}.corrupt"
  os.replace(path, aside)
  return aside


def fetch(url: str, file_name: str, sha256: str | None, directory: str | None = None,
          progress: bool = True) -> str:
  """The path of `file_name` in the cache, downloaded from `url` if it is not there yet.

  `sha256` is the expected hex digest or a prefix of it (None: not checked, logged).
  """
  directory = cache_dir(directory)
  path = os.path.join(directory, file_name)
  expected = sha256 or recorded_sha256(path)
  if os.path.exists(path):
    digest = sha256_of(path)
    if _matches(digest, expected):
      return path
    raise ChecksumError(f"{path} has sha256 {digest}, expected {expected}...; moved to "
                        f"{set_aside(path)}, the next call downloads it again")
  os.makedirs(directory, exist_ok=True)
  partial = f"{path}.partial.{os.getpid()}"
  try:
    digest = _download(url, partial, progress)
    if not _matches(digest, expected):
      raise ChecksumError(f"{url} downloaded with sha256 {digest}, expected {expected}...; "
                          "nothing was kept" + ("" if sha256 else
                          f" (the digest recorded at the first download, {_digest_record(path)})"))
    os.replace(partial, path)
  except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
    raise WeightsUnavailableError(
        f"could not download {url} ({getattr(e, 'reason', e)}). Without network, download it "
        f"elsewhere and place it at {path}" + (f" (sha256 {sha256}...)" if sha256 else "")
        + f", or set ${CACHE_ENV} to a directory that holds {file_name}.") from e
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  if expected is None:
    logging.warning("%s has no recorded sha256; downloaded file's sha256 is %s (recorded once "
                    "it loads)", url, digest)
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
