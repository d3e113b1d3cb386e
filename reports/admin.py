"""The reports' place in the admin: the dashboard's URLs and its entry on the admin index."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path, reverse

from reports.views import REQUIRED_PERMISSIONS, revenue_csv, revenue_dashboard


def report_urls() -> list:
    """Mounted under /admin/ (config/urls.py), behind the admin's login."""
    return [
        path("revenue/", admin.site.admin_view(revenue_dashboard), name="reports-revenue"),
        path("revenue/csv/", admin.site.admin_view(revenue_csv), name="reports-revenue-csv"),
    ]


def add_reports_to_admin_index() -> None:
    """Lists "Revenue dashboard" under "Reports" on the admin index (and in the side bar) for the
    operators who may read it. The default site's app list is extended, not replaced."""
    site = admin.site
    original = site.get_app_list

    def get_app_list(request, app_label=None):
        apps = original(request, app_label)
        if app_label not in (None, "reports") or not request.user.has_perms(REQUIRED_PERMISSIONS):
            return apps
        entry = {
            "name": "Revenue dashboard",
            "object_name": "RevenueDashboard",
            "admin_url": reverse("reports-revenue"),
            "add_url": None,
            "view_only": True,
            "perms": {"view": True},
        }
        apps.append(
            {
                "name": "Reports",
                "app_label": "reports",
                "app_url": reverse("reports-revenue"),
                "has_module_perms": True,
                "models": [entry],
            }
        )
        return apps

    # the admin index lists the dashboard: the site instance's method is wrapped on purpose
    site.get_app_list = get_app_list  # type: ignore[method-assign]
