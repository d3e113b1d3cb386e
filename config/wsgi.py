import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_wsgi_application()  # every request but Stripe's deliveries

from billing.api.webhook_wsgi import StripeWebhookLane  # noqa: E402 - needs the apps loaded

# POST /webhooks/stripe/ skips the middleware stack (billing/api/webhook_wsgi.py)
application = StripeWebhookLane(django_application)
