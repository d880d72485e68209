"""Reference MTA modelling the Exchange Server 2003 SMTP transport pipeline."""
