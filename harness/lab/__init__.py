"""The lab: fake network services (DNS, SMTP peers, directory) that traces run against."""
