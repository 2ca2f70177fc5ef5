"""Search spaces and the operator table, declared once as data and shared by search and export."""
