"""A local stand-in for the Assisters API, for tests and offline development.

Like ``stripe listen``/``stripe trigger``: ``flask emulator serve`` (or
``python -m webhooks_app.emulator serve``) runs it, ``flask emulator trigger chat.completion``
makes it deliver a signed test event to every subscription that listens to that type.
"""

from webhooks_app.emulator.app import EmulatorConfig, EmulatorState, create_emulator_app

__all__ = ["EmulatorConfig", "EmulatorState", "create_emulator_app"]
