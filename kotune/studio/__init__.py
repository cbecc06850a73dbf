"""kotune studio: a web UI over the runs and files under one folder (``kotune studio``).

:mod:`kotune.studio.root` finds runs and guards paths, :mod:`kotune.studio.views`
computes what pages show, :mod:`kotune.studio.chatting` answers in the chat page,
:mod:`kotune.studio.launch` starts ``kotune run`` processes and :mod:`kotune.studio.app`
serves it all over HTTP.
"""
