"""S3's refusals in a user's words: which error of vaeflow's each becomes, and its one line.

storage.SinglePutS3FileSystem catches s3fs's errors (whose botocore cause carries S3's error code)
and raises what these functions make: credentials that were refused, and whose (never the
credentials themselves); a store that sheds load past every retry; a write into a bucket that is
gone.
"""

from __future__ import annotations

from vae_core.errors import CredentialsError, ObjectStoreBusy, StorageError

# Requests that write: into a missing bucket they can only fail (no bucket is ever made here).
WRITES = {"put_object", "create_multipart_upload", "upload_part", "complete_multipart_upload", "copy_object"}
# S3 error codes of a store that sheds load (a HEAD's bare 503 comes as "503"). Not errno EBUSY alone:
# s3fs gives that to a 409 ConditionalRequestConflict too, which storage.create_only_write retries.
BUSY = {"SlowDown", "503", "ServiceUnavailable", "Throttling", "RequestLimitExceeded", "TooManyRequests"}
# S3 error codes that mean the credentials themselves are wrong, not what they may do.
REFUSED_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
# Where botocore found the credentials it signed with (its `method` names), in a user's words.
CREDENTIAL_SOURCES = {
    "env": "the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)",
    "shared-credentials-file": "the shared credentials file (AWS_PROFILE, ~/.aws/credentials)",
    "config-file": "the AWS config file (AWS_PROFILE, ~/.aws/config)",
    "assume-role": "an assumed role (AWS_PROFILE)",
    "sso": "AWS SSO (AWS_PROFILE)",
    "iam-role": "the instance's IAM role",
    "container-role": "the container's IAM role",
}


def error_code(error: BaseException, default: str = "403") -> str:
    """S3's error code (e.g. InvalidAccessKeyId) from s3fs's error's botocore cause, else `default`."""
    response = getattr(error.__cause__, "response", None) or {}
    return response.get("Error", {}).get("Code") or default


def credential_source(explicit: bool, method: str | None) -> str:
    """Where the signing credentials came from: the storage options, or botocore's `method`."""
    if explicit:
        return "the storage options (key, secret)"
    return CREDENTIAL_SOURCES.get(method or "none", f"AWS's credential chain ({method or 'none'})")


def refused(where: str, method: str, code: str, source: str) -> StorageError:
    """A 403: the key itself wrong (CredentialsError), or not allowed this request (StorageError)."""
    if code in REFUSED_CREDENTIALS:
        return CredentialsError(
            f"{where}: the credentials from {source} were refused ({code}): the key id or secret is "
            "wrong or expired for this endpoint"
        )
    return StorageError(
        f"{where}: access denied ({method}: {code}) with the credentials from {source}: they do not "
        "allow this request, or are not valid for this endpoint; check them and the bucket's policy"
    )


def busy(where: str, method: str, code: str) -> ObjectStoreBusy:
    return ObjectStoreBusy(
        f"{where}: the object store is throttling or unavailable ({method}: {code or '503'}) after every "
        "retry; try again later, or with fewer workers"
    )


def bucket_gone(where: str, bucket: str | None) -> StorageError:
    return StorageError(
        f"{where}: no such bucket s3://{bucket} (deleted while the job ran?); nothing was published: "
        "create the bucket and run the job again"
    )
