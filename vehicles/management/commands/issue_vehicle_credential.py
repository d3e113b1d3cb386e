from django.core.management.base import BaseCommand, CommandError

from vehicles.models import Vehicle
from vehicles.services.credentials import vehicle_credential_issue


class Command(BaseCommand):
    help = "Issue (or rotate) a vehicle's API credential and print it once. The old one stops working."

    def add_arguments(self, parser):
        parser.add_argument("vin")

    def handle(self, *args, vin: str, **options):
        vehicle = Vehicle.objects.filter(vin=vin.strip().upper()).first()
        if vehicle is None:
            raise CommandError(f"No vehicle with VIN {vin}. List them in the admin: /admin/vehicles/vehicle/")
        issued = vehicle_credential_issue(vehicle=vehicle)
        self.stderr.write(f"Credential for {vehicle.vin} (shown once; store it in the car):")
        self.stdout.write(f"Vehicle {issued.key_id}.{issued.secret}")
