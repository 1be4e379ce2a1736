"""Email and SMS providers (installed as followups.providers).

The public surface is flat: `Providers` picks console or live (SendGrid / Twilio over httpx)
from settings; the message types and errors are re-exported here. The fake provider server
used by tests and benchmarks lives beside the real transports (`fake_server`).
"""

from followups.errors import PermanentProviderError, ProviderError, TransientProviderError
from followups.providers.facade import Providers
from followups.providers.messages import OutgoingEmail, OutgoingSms, ProviderReceipt

__all__ = [
    "OutgoingEmail",
    "OutgoingSms",
    "PermanentProviderError",
    "ProviderError",
    "ProviderReceipt",
    "Providers",
    "TransientProviderError",
]
