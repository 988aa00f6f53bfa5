"""State and status codes of the legacy contract (section 3)."""

from enum import IntEnum


class BackendState(IntEnum):
    INITIALIZING = 0
    INITIALIZED = 1
    CLEANING = 2
    CLEANED = 3
    LOADING = 4
    LOADED = 5
    RUNNING = 6
    EXITING = 7
    EXITED = 8
    ERROR = 9


class ProcStatus(IntEnum):
    """Status of one inference process; clients wait for process "0" to be RUNNING."""

    UNLOADED = 0
    CLEANING = 1
    LOADING = 2
    PREHEATING = 3
    RUNNING = 4
    EXITED = 5
    ERROR = 6
    LABEL_ERROR = 7  # the bundle's labels do not fit its output


#: process status -> the word legacy `GET /switch` answers
SWITCH_WORDS = {
    ProcStatus.UNLOADED: "loading",
    ProcStatus.CLEANING: "cleaning",
    ProcStatus.LOADING: "loading",
    ProcStatus.PREHEATING: "preheating",
    ProcStatus.RUNNING: "loaded",
    ProcStatus.EXITED: "failed",
    ProcStatus.ERROR: "failed",
    ProcStatus.LABEL_ERROR: "failed",
}
