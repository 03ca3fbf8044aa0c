"""Operations for the price-prediction pipeline: the ``pipectl`` CLI and the local cloud.

Not shipped to Lambda: nothing here is imported by functions or the shared layer.
"""
