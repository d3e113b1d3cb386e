"""Adapters to outside services. `billing.gateways.stripe` is the only module that calls the Stripe SDK."""
