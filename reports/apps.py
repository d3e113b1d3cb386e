from django.apps import AppConfig


class ReportsConfig(AppConfig):
    name = "reports"
    verbose_name = "Reports"

    def ready(self) -> None:
        from reports.admin import add_reports_to_admin_index
        from reports.audit import add_audit_history_to_admin

        add_reports_to_admin_index()
        add_audit_history_to_admin()
