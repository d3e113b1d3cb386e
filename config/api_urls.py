"""Everything under /api/v1/."""

urlpatterns: list = []
