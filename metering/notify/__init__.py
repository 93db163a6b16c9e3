"""Notification delivery (`metering notifier`): the notifications the pipeline decides,
delivered to people — signed webhooks and email — at least once, never lost, with the
notification's id so receivers drop repeats. See `metering.notify.notifier`."""
