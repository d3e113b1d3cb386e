from django.core.management.base import BaseCommand

from billing.services.schedules import SCHEDULES, periodic_tasks_install


class Command(BaseCommand):
    help = "Create or update the periodic billing jobs run by Celery beat (idempotent)."

    def handle(self, *args, **options):
        periodic_tasks_install()
        for name, (task, every, period) in SCHEDULES.items():
            self.stdout.write(f"  {name}: {task} every {every} {period}")
