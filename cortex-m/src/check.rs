//! Checks for tests that return [`TestResult`](crate::TestResult): on
//! failure they print where and what (values with `{:?}`) and return
//! `Err(Fail)`, so the other tests still run.

/// Fails the test with a message.
macro_rules! fail {
    ($($fmt:tt)+) => {{
        cortex_m_semihosting::hprintln!(
            "    {}:{}: {}",
            file!(),
            line!(),
            format_args!($($fmt)+)
        );
        return Err($crate::Fail);
    }};
}

/// Fails the test unless the condition holds.
macro_rules! check {
    ($cond:expr) => {
        if !$cond {
            fail!("check failed: {}", stringify!($cond));
        }
    };
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            fail!("check failed: {}: {}", stringify!($cond), format_args!($($fmt)+));
        }
    };
}

/// Fails the test unless the two sides are equal.
macro_rules! check_eq {
    ($a:expr, $b:expr $(,)?) => {
        // `match`, as `assert_eq!`: temporaries live to the end.
        match (&$a, &$b) {
            (a, b) => {
                if a != b {
                    fail!(
                        "{} == {}: {:?} != {:?}",
                        stringify!($a),
                        stringify!($b),
                        a,
                        b
                    );
                }
            }
        }
    };
    ($a:expr, $b:expr, $($fmt:tt)+) => {
        match (&$a, &$b) {
            (a, b) => {
                if a != b {
                    fail!(
                        "{} == {}: {:?} != {:?} ({})",
                        stringify!($a),
                        stringify!($b),
                        a,
                        b,
                        format_args!($($fmt)+)
                    );
                }
            }
        }
    };
}

/// The `Ok` value, or fail the test with the error.
macro_rules! ok {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => fail!("{} returned Err({:?})", stringify!($e), e),
        }
    };
}
