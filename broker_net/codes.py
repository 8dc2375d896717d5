"""The vocabularies messages carry: error codes and their areas, plan statuses, preprocessing
methods and steps. Each is an enum whose values are fixed by the wire protocol."""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ErrorArea(IntEnum):
    """The area an :class:`ErrorCode` belongs to (its hundreds digit)."""

    PROTOCOL = 1
    SECURITY = 2
    NODE = 3
    TRANSFER = 4
    RESEARCHER = 5


class ErrorCode(IntEnum):
    """Why a request failed. The hundreds digit is the :class:`ErrorArea`."""

    # 1xx: the message itself
    PROTOCOL_ERROR = 100
    MALFORMED_MESSAGE = 101
    INVALID_MESSAGE = 102
    UNKNOWN_MESSAGE_TYPE = 103
    UNSUPPORTED_VERSION = 104
    MESSAGE_TOO_LARGE = 105
    # 2xx: authentication and encryption
    SECURITY_ERROR = 200
    UNSIGNED_MESSAGE = 201
    UNKNOWN_KEY = 202
    BAD_SIGNATURE = 203
    EXPIRED_MESSAGE = 204
    REPLAYED_MESSAGE = 205
    DECRYPTION_FAILED = 206
    # 3xx: the node could not do the work
    NODE_ERROR = 300
    DATASET_NOT_FOUND = 301
    DATA_LOADING_FAILED = 302
    PLAN_NOT_APPROVED = 303
    PLAN_INVALID = 304
    PLAN_FAILED = 305
    PLAN_TIMEOUT = 306
    STATE_NOT_FOUND = 307
    ANALYTICS_FAILED = 308
    PREPROCESSING_FAILED = 309
    SECAGG_FAILED = 310
    NODE_SHUTTING_DOWN = 311
    BAD_ARGUMENTS = 312
    CANCELLED = 313
    # 4xx: moving the bytes
    TRANSFER_ERROR = 400
    TRANSFER_STALLED = 401
    TRANSFER_CORRUPTED = 402
    # 5xx: raised on the researcher side, never sent by a node
    RESEARCHER_ERROR = 500
    NODE_UNREACHABLE = 501

    @property
    def area(self) -> ErrorArea:
        """The area this code belongs to."""
        return ErrorArea(self.value // 100)


class TrainingPlanStatus(StrEnum):
    """Approval status of a training plan on a node."""

    APPROVED = "Approved"
    PENDING = "Pending"
    REJECTED = "Rejected"
    NOT_REGISTERED = "Not registered"


class PreprocType(StrEnum):
    """Which preprocessing method a :class:`PreprocRequest` drives."""

    STANDARDIZE = "standardize"
    IMPUTE = "impute"


class PreprocStep(StrEnum):
    """Step of a preprocessing method.

    ``FIT`` stores the parameters computed from global statistics under a state id;
    ``APPLY`` transforms the dataset with them so that later training reads the result.
    """

    FIT = "fit"
    APPLY = "apply"
