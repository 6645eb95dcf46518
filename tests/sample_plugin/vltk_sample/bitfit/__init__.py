"""Adapter ``bitfit``: only the backbone's bias terms train."""
