import cProfile, pstats, pytest
from billing.services.demo_data import demo_data_seed
pytestmark = pytest.mark.django_db
def test_p():
    pr = cProfile.Profile(); pr.enable(); demo_data_seed(); pr.disable()
    pstats.Stats(pr).sort_stats("cumulative").print_stats(18)
