"""The CA key file of a hub cluster, and sealing the mesh's private keys with it for a shared store.

Hubs that share a PostgreSQL store keep the CA (and root) private keys in the database only **sealed**: encrypted
with AES-256-GCM under a 32-byte key that lives in a file beside each hub (`--ca-key-file`), made by the first hub
and copied by the operator. A dump of the database alone therefore cannot mint certificates.

* `create_key_file(path)`: 32 random bytes, base64 on one line, created 0600 and never over an existing file.
* `read_key_file(path)`: refuses a missing, malformed or group/other-readable file (one line saying `chmod 600`).
* `seal_meta(meta, key)` / `unseal_meta(meta, key, key_file=...)`: the same for the private keys among a mesh's meta
  values (`SEALED_META`: "ca_key", "root_key", each sealed with its own meta key name as `what`).
* `seal(pem, key, mesh_id, what)` -> `"v1:" + base64(nonce || ciphertext || tag)`, with a fresh 12-byte nonce and
  the mesh id and `what` (e.g. "ca_key") bound as associated data, so a token cannot be moved to another mesh or
  swapped between two keys of one mesh. `unseal(...)` gives the PEM back or a one-line `BadInput` (wrong key file,
  another mesh, a changed or truncated token, a newer format).
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ztm.errors import BadInput

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
VERSION = "v1:"
SEALED_META = ("ca_key", "root_key")
"""The meta values that are private keys: sealed in a shared store, plain PEM in a single hub's SQLite file."""


def create_key_file(path: Path) -> bytes:
    """Write a new random key to `path` (0600, refusing to replace any existing file); return the key."""
    key = os.urandom(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise BadInput(
            f"the CA key file {path} already exists; a hub never overwrites one (it would lock the mesh out of its "
            "keys): give it as --ca-key-file to use it, or choose a new path"
        ) from None
    except OSError as exc:
        raise BadInput(f"cannot create the CA key file {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, base64.b64encode(key) + b"\n")
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise BadInput(f"cannot write the CA key file {path}: {exc.strerror or exc}") from None
    os.close(fd)
    return key


def read_key_file(path: Path) -> bytes:
    """The key in `path`; `BadInput` (one line) when it is missing, readable by others, or not a key file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise BadInput(
            f"the CA key file {path} does not exist; copy the file the first hub of this mesh made to it"
        ) from None
    except OSError as exc:
        raise BadInput(f"cannot read the CA key file {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise BadInput(f"the CA key file {path} is not a regular file; give the file the first hub made")
    if st.st_mode & 0o077:
        raise BadInput(f"the CA key file {path} is readable by group or others; run: chmod 600 {path}")
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read the CA key file {path}: {exc.strerror or exc}") from None
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise BadInput(
            f"the CA key file {path} is not a ztm CA key file (one line of base64, {KEY_BYTES} bytes); "
            "use the file the first hub made"
        )
    return key


def _aad(mesh_id: str, what: str) -> bytes:
    return b"ztm ca key file v1\x00" + mesh_id.encode() + b"\x00" + what.encode()


def seal(pem: str, key: bytes, mesh_id: str, what: str) -> str:
    """Encrypt `pem` for the store, bound to `mesh_id` and `what`."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"a CA key file key is {KEY_BYTES} bytes")
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, pem.encode(), _aad(mesh_id, what))
    return VERSION + base64.b64encode(nonce + sealed).decode()


def is_sealed(value: str) -> bool:
    """Whether a stored value is a sealed token (rather than a plain PEM from a single-hub store)."""
    return value.startswith(VERSION)


def unseal(token: str, key: bytes, mesh_id: str, what: str, *, key_file: str | Path = "given") -> str:
    """The PEM sealed in `token`; `BadInput` naming `key_file` when the key does not open it."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"a CA key file key is {KEY_BYTES} bytes")
    prefix, colon, body = token.partition(":")
    if not colon or not prefix.startswith("v") or not prefix[1:].isdigit():
        raise BadInput(f"the store's sealed {what} is damaged (no version prefix); restore the database from a backup")
    if prefix + ":" != VERSION:
        raise BadInput(f"the store's {what} was sealed by a newer ztm (format {prefix}); upgrade ztm")
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) < NONCE_BYTES + TAG_BYTES:
        raise BadInput(f"the store's sealed {what} is damaged (truncated); restore the database from a backup")
    try:
        pem = AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(mesh_id, what))
    except InvalidTag:
        raise BadInput(
            f"the CA key file {key_file} does not open this mesh's keys: it belongs to another mesh or was changed "
            "(or the database was); use the file the first hub made"
        ) from None
    try:
        return pem.decode()
    except UnicodeDecodeError:  # authenticated, so only a sealer that sealed non-text; never ours
        raise BadInput(f"the store's sealed {what} is not text; restore the database from a backup") from None


def seal_meta(meta: dict[str, str], key: bytes) -> dict[str, str]:
    """`meta` with its private keys (`SEALED_META`) sealed under `key`, bound to `meta["mesh_id"]` (values that
    are sealed already stay as they are)."""
    out = dict(meta)
    for what in SEALED_META:
        if what in out and not is_sealed(out[what]):
            out[what] = seal(out[what], key, meta["mesh_id"], what)
    return out


def unseal_meta(meta: dict[str, str], key: bytes, *, key_file: str | Path = "given") -> dict[str, str]:
    """`meta` with its sealed private keys opened; `BadInput` naming `key_file` when the key does not open them."""
    out = dict(meta)
    for what in SEALED_META:
        if what in out and is_sealed(out[what]):
            out[what] = unseal(out[what], key, meta.get("mesh_id", ""), what, key_file=key_file)
    return out
