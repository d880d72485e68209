"""Reports: Allure, the conformance matrix, the path diagram, the differential run, the summary."""
