"""URIs to filesystems: every location (local path, file://, s3://, memory://) goes through one place.

S3 endpoint and credentials come from the standard AWS environment and config (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_PROFILE, ...) or from explicit `storage_options`; nothing is provider-specific.
`storage_options` are fsspec's (s3fs's for S3): key, secret, token, anon, endpoint_url, client_kwargs
(endpoint_url, region_name, aws_access_key_id, ...), config_kwargs (region_name, ...). The same options
are translated for pyarrow's native S3 client (`arrow_filesystem`) and for delta-rs
(`delta_storage_options`).

Every write to S3 is one PutObject (S3 takes up to 5 GiB in one; our files are bounded: shards by
rows per shard, checkpoints by model size): a writer killed mid-write leaves no object and no
incomplete multipart upload, whose parts S3 would keep, unlisted and billed, until aborted.
`filesystem` gives s3fs that buffers a written file and PUTs it on close; `arrow_filesystem(...,
for_writing=True)` gives the same to pyarrow writers, whose native S3 output stream always opens a
multipart upload. Reads keep pyarrow's native S3 client.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import pyarrow.fs as pafs
from botocore.exceptions import NoCredentialsError, PartialCredentialsError
from fsspec import AbstractFileSystem
from fsspec.asyn import sync_wrapper
from s3fs import S3FileSystem

from vae_core.data import s3_errors
from vae_core.errors import ConfigError, CredentialsError, StorageError
from vae_core.redaction import holds_redacted


def scheme(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def absolute(uri: str) -> str:
    """A local path as an absolute path (Ray workers and actors do not share the caller's working
    directory); any other URI as it is."""
    if not uri or ("://" in uri and not uri.startswith("file://")):
        return uri
    return str(Path(uri.removeprefix("file://")).resolve())


# scheme://user[:password]@host/...: credentials inside a URI, which would reach logs and tracebacks.
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@")


def mask_uri(uri: str) -> str:
    """The URI with any user info (s3://KEY:SECRET@bucket/...) shown as ***."""
    return _USERINFO.sub(r"\1***@", uri)


def _check_not_redacted(uri: str, storage_options: dict[str, Any] | None) -> None:
    if _USERINFO.match(uri):
        raise CredentialsError(
            f"{mask_uri(uri)}: credentials inside a URI are refused (they would be written to logs); "
            "give them in the AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or "
            "data.storage_options"
        )
    if storage_options and holds_redacted(storage_options):
        raise ConfigError(
            f"{uri}: storage_options hold redacted values ('***'): they come from a written config "
            "(e.g. a checkpoint's config.json), which never carries secrets; pass the real storage "
            "options explicitly"
        )


# S3's limit for one PutObject; s3fs PUTs a file in one request below its block size.
SINGLE_PUT_MAX = 5 * 2**30
NO_CREDENTIALS = (
    "no AWS credentials for object storage: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
    "AWS_PROFILE), or give them in data.storage_options"
)


class SinglePutS3FileSystem(S3FileSystem):
    """s3fs whose writes of a file under 5 GiB are one PutObject, never a multipart upload, and that
    creates no buckets.

    s3fs's S3File buffers writes and, closed before `block_size` bytes, sends them with one
    put_object (S3File._upload_chunk / commit); past it, it starts a multipart upload. pipe_file and
    put_file PUT once below min(5 GiB, 2 * chunksize). So writes get a 5 GiB block and chunksize
    (the file is held in memory until closed); reads keep the usual 50 MiB read-ahead block. Append
    mode ("ab") onto an existing object of 5 MiB or more still copies it as a part, as in s3fs.
    """

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None, **kwargs: Any) -> Any:
        if "r" not in mode:
            block_size = SINGLE_PUT_MAX
        return super()._open(path, mode, block_size=block_size, **kwargs)

    async def _call_s3(self, method: str, *akwarglist: Any, **kwargs: Any) -> Any:
        """s3fs's request, with the refusals that are about the user's URI or environment as vaeflow's
        errors naming s3://bucket/key (and never a credential): none to send (CredentialsError, raised
        before any request), a 403, a write into a bucket that is gone, a store shedding load past every
        retry (s3_errors)."""
        try:
            return await super()._call_s3(method, *akwarglist, **kwargs)
        except (NoCredentialsError, PartialCredentialsError) as e:
            raise CredentialsError(f"{_s3_location(kwargs)}: {NO_CREDENTIALS}") from e
        except PermissionError as e:
            raise await self._refused(e, method, kwargs) from e
        except FileNotFoundError as e:  # a write into a bucket that is gone (a read's miss stays as it is)
            if method not in s3_errors.WRITES or s3_errors.error_code(e, default="") != "NoSuchBucket":
                raise
            raise s3_errors.bucket_gone(_s3_location(kwargs), kwargs.get("Bucket")) from e
        except OSError as e:
            code = s3_errors.error_code(e, default="")
            if code not in s3_errors.BUSY:  # e.g. a 409 ConditionalRequestConflict: create_only_write's
                raise
            raise s3_errors.busy(_s3_location(kwargs), method, code) from e

    async def _refused(self, error: PermissionError, method: str, kwargs: dict[str, Any]) -> StorageError:
        """A 403 as one line saying whose credentials were refused (never the credentials): the S3 error
        code says when the key itself is wrong (a HEAD request carries no code, only 403)."""
        code = s3_errors.error_code(error)
        if code == "403" and kwargs.get("Bucket"):  # a HEAD's 403: ask once more, in a way that says why
            try:
                await super()._call_s3("list_objects_v2", Bucket=kwargs["Bucket"], MaxKeys=1)
            except PermissionError as again:
                if (said := s3_errors.error_code(again)) in s3_errors.REFUSED_CREDENTIALS:
                    code = said
            except Exception:  # only the message's detail depends on it
                pass
        method_name = None if self.key else getattr(await self.session.get_credentials(), "method", None)
        return s3_errors.refused(
            _s3_location(kwargs), method, code, s3_errors.credential_source(bool(self.key), method_name)
        )

    async def _mkdir(self, path: str, acl: Any = False, create_parents: bool = True, **kwargs: Any) -> None:
        """Nothing to make for a prefix; and no bucket is ever made here: a bucket belongs to an
        account, its policies and region (s3fs's mkdir and makedirs create a missing one). A missing
        bucket is a StorageError naming it; an existing bucket alone is FileExistsError as in s3fs."""
        bucket, key, _ = self.split_path(self._strip_protocol(path).rstrip("/"))
        if await self._bucket_missing(bucket):
            raise StorageError(
                f"s3://{bucket}: no such bucket (vaeflow creates no buckets: create it first, e.g. "
                f"`aws s3 mb s3://{bucket}`)"
            )
        if not key:
            raise FileExistsError(f"s3://{bucket}")

    async def _bucket_missing(self, bucket: str) -> bool:
        """True when S3 says the bucket does not exist. s3fs's exists() says False for any error, missing
        credentials included; here those raise (CredentialsError naming the bucket), and a 403 (a policy
        without s3:ListBucket) counts as present: the request that follows says what is refused."""
        try:
            await self._call_s3("head_bucket", Bucket=bucket)
        except FileNotFoundError:
            return True
        except CredentialsError:
            raise
        except StorageError:
            pass
        return False

    bucket_missing = sync_wrapper(_bucket_missing)

    async def _pipe_file(self, path: str, data: bytes, chunksize: int = SINGLE_PUT_MAX, **kwargs: Any) -> Any:
        return await super()._pipe_file(path, data, chunksize=chunksize, **kwargs)

    async def _put_file(
        self, lpath: str, rpath: str, chunksize: int | None = SINGLE_PUT_MAX, **kwargs: Any
    ) -> Any:
        return await super()._put_file(lpath, rpath, chunksize=chunksize, **kwargs)


def _s3_location(request: dict[str, Any]) -> str:
    """s3://bucket/key (or prefix) of an S3 request's parameters."""
    key = request.get("Key") or request.get("Prefix")
    return "s3://" + "/".join(p for p in (request.get("Bucket"), key) if p)


def filesystem(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    """Resolve a URI to (fsspec filesystem, path inside it); S3 writes are single PUTs."""
    _check_not_redacted(uri, storage_options)
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    if type(fs) is S3FileSystem:
        # Same arguments (storage_options and any the URL implied), single-PUT writes.
        fs = SinglePutS3FileSystem(*fs.storage_args, **fs.storage_options)
    return fs, path


# s3fs settings that change caching only, never where requests go or as whom.
_S3FS_TUNING = frozenset(
    {
        "skip_instance_cache",
        "use_listings_cache",
        "listings_expiry_time",
        "max_paths",
        "default_block_size",
        "default_fill_cache",
        "default_cache_type",
        "max_concurrency",
        "cache_regions",
    }
)
_CLIENT_CREDENTIALS = {
    "aws_access_key_id": "key",
    "aws_secret_access_key": "secret",
    "aws_session_token": "token",
}


@dataclass
class S3Options:
    """fsspec-style S3 options reduced to what every S3 client here understands."""

    key: str | None = None
    secret: str | None = None
    token: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    anon: bool = False
    unsupported: list[str] = field(default_factory=list)  # dotted names with no native equivalent


def s3_options(storage_options: dict[str, Any] | None) -> S3Options:
    """Read s3fs-style options (key/secret/token, endpoint_url and region_name at the top level or in
    client_kwargs, region_name in config_kwargs); anything else is listed in `unsupported`."""
    out = S3Options()
    for name, value in (storage_options or {}).items():
        if name in ("key", "secret", "token", "endpoint_url"):
            setattr(out, name, value)
        elif name == "anon":
            out.anon = bool(value)
        elif name == "client_kwargs" and isinstance(value, dict):
            for k, v in value.items():
                if k in _CLIENT_CREDENTIALS:
                    setattr(out, _CLIENT_CREDENTIALS[k], v)
                elif k == "endpoint_url":
                    out.endpoint_url = v
                elif k == "region_name":
                    out.region = v
                else:
                    out.unsupported.append(f"client_kwargs.{k}")
        elif name == "config_kwargs" and isinstance(value, dict):
            for k, v in value.items():
                if k == "region_name":
                    out.region = v
                elif not (k == "signature_version" and v == "s3v4"):  # s3v4 is every client's default
                    out.unsupported.append(f"config_kwargs.{k}")
        elif name not in _S3FS_TUNING:
            out.unsupported.append(name)
    return out


def _endpoint(url: str) -> tuple[str, str]:
    """'http://host:port' -> ('http', 'host:port'); a bare host means https."""
    kind, sep, rest = url.partition("://")
    return (kind, rest.rstrip("/")) if sep else ("https", url.rstrip("/"))


def _native_s3(uri: str, opts: S3Options) -> tuple[pafs.FileSystem, str]:
    path = uri.split("://", 1)[1]
    endpoint = opts.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    region = opts.region
    if region is None and endpoint is None:
        # What FileSystem.from_uri does: S3 answers requests to another region's bucket with a redirect
        # that the C++ client does not follow.
        with contextlib.suppress(OSError):
            region = pafs.resolve_s3_region(path.split("/", 1)[0])
    kind, host = _endpoint(endpoint) if endpoint else (None, None)
    fs = pafs.S3FileSystem(
        access_key=opts.key,
        secret_key=opts.secret,
        session_token=opts.token,
        anonymous=opts.anon,
        region=region,
        scheme=kind,
        endpoint_override=host,
    )
    return fs, path


def arrow_filesystem(
    uri: str, storage_options: dict[str, Any] | None = None, for_writing: bool = False
) -> tuple[pafs.FileSystem, str]:
    """Resolve a URI to (pyarrow filesystem, path inside it) for pyarrow.parquet and Ray Data.

    Local and S3 URIs get pyarrow's native filesystems (fast C++ I/O; S3 honours AWS_ENDPOINT_URL),
    S3 with explicit options too when they translate (credentials, endpoint, region); other schemes,
    or S3 options only s3fs knows, go through fsspec wrapped for pyarrow. `for_writing=True` (what
    pyarrow writers and Ray Train's checkpoint upload get): S3 goes through `filesystem`'s
    single-PUT s3fs, because pyarrow's native S3 output stream opens a multipart upload for every
    file, which a killed writer leaves behind; reads through it work too, at s3fs speed.
    """
    _check_not_redacted(uri, storage_options)
    kind = scheme(uri)
    if kind == "file":
        return pafs.LocalFileSystem(), fsspec.core.url_to_fs(uri)[1]
    if kind == "s3" and for_writing:
        # No listings cache: other processes (Ray Train workers) write here, and a cached listing
        # would hide their files from this one (pyarrow's native client caches nothing either).
        fs, path = filesystem(uri, {**(storage_options or {}), "use_listings_cache": False})
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path
    if kind == "s3" and not storage_options:
        return pafs.FileSystem.from_uri(uri)
    if kind == "s3":
        opts = s3_options(storage_options)
        if not opts.unsupported:
            return _native_s3(uri, opts)
    fs, path = filesystem(uri, storage_options)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def delta_storage_options(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, str]:
    """fsspec-style `storage_options` for `uri` as delta-rs (object_store) storage options.

    S3: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN from key / secret / token,
    AWS_ENDPOINT_URL (+ AWS_ALLOW_HTTP=true for http://) from the options' endpoint_url or else the
    environment's AWS_ENDPOINT_URL, AWS_REGION from the options' region_name or else AWS_REGION /
    AWS_DEFAULT_REGION, AWS_SKIP_SIGNATURE for anon. Credentials not given are left to delta-rs's own
    AWS environment chain. Local paths need none (S3 options given with one are ignored). Options
    delta-rs has no equivalent for are an error naming them, not silently dropped.
    """
    _check_not_redacted(uri, storage_options)
    kind = scheme(uri)
    if kind == "file":
        return {}  # options for object storage do not apply to a local path (as with fsspec)
    if kind != "s3":
        raise StorageError(f"{uri}: Delta tables live on local paths or s3://, not {kind}://")
    opts = s3_options(storage_options)
    if opts.unsupported:
        raise ConfigError(
            f"{uri}: storage option(s) {', '.join(opts.unsupported)} have no delta-rs equivalent "
            "(supported: key, secret, token, anon, endpoint_url, client_kwargs.endpoint_url / "
            "region_name / aws_*, config_kwargs.region_name)"
        )
    credentials = {
        "AWS_ACCESS_KEY_ID": opts.key,
        "AWS_SECRET_ACCESS_KEY": opts.secret,
        "AWS_SESSION_TOKEN": opts.token,
    }
    out = {name: str(value) for name, value in credentials.items() if value}
    endpoint = opts.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        out["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            out["AWS_ALLOW_HTTP"] = "true"
    region = opts.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        out["AWS_REGION"] = region
    if opts.anon:
        out["AWS_SKIP_SIGNATURE"] = "true"
    return out


def _missing_bucket(uri: str, storage_options: dict[str, Any] | None) -> str | None:
    """The s3://bucket of `uri` when that bucket does not exist, else None (other schemes: None)."""
    if scheme(uri) != "s3":
        return None
    fs, path = filesystem(uri, storage_options)
    bucket = path.split("/", 1)[0]
    return f"s3://{bucket}" if fs.bucket_missing(bucket) else None


def why_missing(uri: str, storage_options: dict[str, Any] | None = None) -> str:
    """Why nothing is at `uri`: its bucket does not exist (S3), or the path does not."""
    bucket = _missing_bucket(uri, storage_options)
    return f"no such bucket {bucket}" if bucket else "path does not exist"


def check_bucket(uri: str, storage_options: dict[str, Any] | None = None) -> None:
    """Before a job writes to `uri`: its bucket exists (S3), else StorageError naming it."""
    if bucket := _missing_bucket(uri, storage_options):
        raise StorageError(f"{uri}: no such bucket {bucket} (vaeflow creates no buckets)")


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def uri_of(uri_with_scheme: str, path: str) -> str:
    """Rebuild a URI for `path` inside the filesystem of `uri_with_scheme`."""
    kind = scheme(uri_with_scheme)
    return path if kind == "file" else f"{kind}://{path.lstrip('/')}"


# memory:// lives in this process: a lock makes its check-then-write atomic.
_MEMORY_CREATE_LOCK = threading.Lock()


def _s3_write_in_flight(error: OSError) -> bool:
    """S3 answers 409 ConditionalRequestConflict while another conditional write of the key is in flight."""
    response = getattr(error.__cause__, "response", None) or {}
    return error.errno == errno.EBUSY or response.get("Error", {}).get("Code") == "ConditionalRequestConflict"


def create_only_write(uri: str, data: bytes, storage_options: dict[str, Any] | None = None) -> bool:
    """Write `data` to `uri` only if no object is there yet: True when written, False when one exists.

    Atomic against concurrent writers, so it can carry a compare-and-swap: of several writers of one
    key exactly one gets True. Local files: a fsynced temporary file hard-linked to the name (`link`
    refuses an existing name); S3: a conditional PUT (If-None-Match: *); memory:// (tests): a check
    and a write under a process lock. Other schemes raise StorageError rather than write unconditionally.
    """
    fs, path = filesystem(uri, storage_options)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    kind = scheme(uri)
    if kind == "file":
        if parent:
            fs.makedirs(parent, exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)  # the name, once linked, keeps the data
    if kind == "s3":
        for attempt in range(5):
            try:
                fs.pipe_file(path, data, mode="create")
                return True
            except FileExistsError:
                return False
            except OSError as e:
                if not _s3_write_in_flight(e) or attempt == 4:
                    raise
                time.sleep(0.05 * 2**attempt)  # the other write settles, then ours gets 412
    if kind == "memory":
        with _MEMORY_CREATE_LOCK:
            if fs.exists(path):
                return False
            if parent:
                fs.makedirs(parent, exist_ok=True)
            fs.pipe_file(path, data)
            return True
    raise StorageError(f"{uri}: no create-only write for scheme {kind!r} (file, s3 and memory have one)")
