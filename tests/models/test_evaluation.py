import numpy as np
import pandas as pd

from fraudlite.models.evaluation import known_fraud_mask

DAY = 86_400


def test_known_fraud_cards_are_excluded_after_the_delay_for_the_horizon():
    days = np.array([0, 3, 5, 6, 10, 40, 2, 9])
    df = pd.DataFrame(
        {
            "customer_id": ["a", "a", "a", "a", "a", "a", "b", "b"],
            "ts": 20_000 * DAY + days * DAY,
            "label": [1, 0, 0, 1, 0, 0, 0, 0],
        }
    )
    mask = known_fraud_mask(df, delay_days=5, horizon_days=28)
    # a's fraud on day 0 is known from day 5; day 6's fraud is known from 11; day 40 is 34 days after 6 -> kept.
    np.testing.assert_array_equal(mask, [False, False, True, True, True, False, False, False])
    assert not known_fraud_mask(df, delay_days=5, horizon_days=0).any()
