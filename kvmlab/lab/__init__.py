"""The lab's logic, apart from its views: sessions, actions, the inspector's decoding, export.

Nothing here imports ipywidgets (``kvmlab.widgets`` does), so it is usable and testable from
plain scripts; the session is a ``traitlets.HasTraits`` (ipywidgets' own model layer), so views
``observe`` or ``dlink`` it as they would any widget.
"""

from .actions import ActionOutcome, CallOutcome
from .export import export_run
from .session import ACTIONS, LabSession, Message
from .timeline import record_states

__all__ = ["ACTIONS", "ActionOutcome", "CallOutcome", "LabSession", "Message", "export_run", "record_states"]
