"""The lab's logic, apart from its views: sessions, actions, the inspector's decoding, export.

Nothing here imports ipywidgets (``kvmlab.widgets`` does), so it is usable and testable from
plain scripts.
"""

from .export import export_run
from .session import ACTIONS, LabSession, Message
from .timeline import record_states

__all__ = ["ACTIONS", "LabSession", "Message", "export_run", "record_states"]
