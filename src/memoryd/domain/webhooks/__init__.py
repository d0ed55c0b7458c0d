"""Webhooks: signed HTTP deliveries of an environment's memory changes.

- `model`: the values and the ports (`WebhookStore`, `UrlGuard`, `Sender`);
- `service`: WebhookService's rules (`WebhookManager`);
- `matching`: which webhooks an event goes to, and its JSON body;
- `signing`: Standard Webhooks secrets and signatures;
- `delivery`: the fan-out step (`Dispatcher`), one attempt (`Courier`) and
  the retry policy.
"""

from __future__ import annotations

from memoryd.domain.webhooks.delivery import Courier, Dispatcher, RetryPolicy
from memoryd.domain.webhooks.model import (
    Attempt,
    Delivery,
    DeliveryClaim,
    DeliveryState,
    Disabled,
    IssuedWebhook,
    NewDelivery,
    Outcome,
    Response,
    Sender,
    SigningKeys,
    UrlGuard,
    Webhook,
    WebhookDraft,
    WebhookState,
    WebhookStore,
)
from memoryd.domain.webhooks.service import DeliveryPage, WebhookManager, WebhookPage

__all__ = [
    "Attempt",
    "Courier",
    "Delivery",
    "DeliveryClaim",
    "DeliveryPage",
    "DeliveryState",
    "Disabled",
    "Dispatcher",
    "IssuedWebhook",
    "NewDelivery",
    "Outcome",
    "Response",
    "RetryPolicy",
    "Sender",
    "SigningKeys",
    "UrlGuard",
    "Webhook",
    "WebhookDraft",
    "WebhookManager",
    "WebhookPage",
    "WebhookState",
    "WebhookStore",
]
