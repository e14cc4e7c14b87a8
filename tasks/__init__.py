"""tunegate's library: pure stage cores and one Prefect @task shell per stage."""
