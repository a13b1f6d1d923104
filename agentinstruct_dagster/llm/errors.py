"""HTTP statuses of model calls: which are worth a retry, and the failure class each gets."""

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}
OVERLOAD_STATUS = {429, 503}


def status_class(status: int) -> str:
    """The failure class of an HTTP error status, the same online and in a batch's error file."""
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "server_error"
    return {401: "auth", 403: "auth", 404: "not_found", 408: "timeout", 409: "conflict"}.get(status, "bad_request")
