"""byzlearn in a Flower app: robust aggregation against Byzantine clients on the embedded digits."""
