//! The PKCS#11 2.40 function table, in `CK_FUNCTION_LIST` order, as an enum usable for counters
//! and control-file rules.

macro_rules! functions {
    ($($name:ident),* $(,)?) => {
        /// One entry of `CK_FUNCTION_LIST`.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub(crate) enum Func {
            $($name,)*
        }

        impl Func {
            /// Every function, in `CK_FUNCTION_LIST` order.
            pub(crate) const ALL: &'static [Func] = &[$(Func::$name,)*];
            /// Number of functions in `CK_FUNCTION_LIST`.
            pub(crate) const COUNT: usize = Self::ALL.len();

            /// The PKCS#11 name, e.g. `C_Sign`.
            pub(crate) fn name(self) -> &'static str {
                match self {
                    $(Func::$name => stringify!($name),)*
                }
            }

            /// Looks a function up by its PKCS#11 name.
            pub(crate) fn from_name(name: &str) -> Option<Func> {
                match name {
                    $(stringify!($name) => Some(Func::$name),)*
                    _ => None,
                }
            }

            /// Position in `CK_FUNCTION_LIST` (dense, `< COUNT`).
            pub(crate) fn index(self) -> usize {
                self as usize
            }
        }
    };
}

functions! {
    C_Initialize,
    C_Finalize,
    C_GetInfo,
    C_GetFunctionList,
    C_GetSlotList,
    C_GetSlotInfo,
    C_GetTokenInfo,
    C_GetMechanismList,
    C_GetMechanismInfo,
    C_InitToken,
    C_InitPIN,
    C_SetPIN,
    C_OpenSession,
    C_CloseSession,
    C_CloseAllSessions,
    C_GetSessionInfo,
    C_GetOperationState,
    C_SetOperationState,
    C_Login,
    C_Logout,
    C_CreateObject,
    C_CopyObject,
    C_DestroyObject,
    C_GetObjectSize,
    C_GetAttributeValue,
    C_SetAttributeValue,
    C_FindObjectsInit,
    C_FindObjects,
    C_FindObjectsFinal,
    C_EncryptInit,
    C_Encrypt,
    C_EncryptUpdate,
    C_EncryptFinal,
    C_DecryptInit,
    C_Decrypt,
    C_DecryptUpdate,
    C_DecryptFinal,
    C_DigestInit,
    C_Digest,
    C_DigestUpdate,
    C_DigestKey,
    C_DigestFinal,
    C_SignInit,
    C_Sign,
    C_SignUpdate,
    C_SignFinal,
    C_SignRecoverInit,
    C_SignRecover,
    C_VerifyInit,
    C_Verify,
    C_VerifyUpdate,
    C_VerifyFinal,
    C_VerifyRecoverInit,
    C_VerifyRecover,
    C_DigestEncryptUpdate,
    C_DecryptDigestUpdate,
    C_SignEncryptUpdate,
    C_DecryptVerifyUpdate,
    C_GenerateKey,
    C_GenerateKeyPair,
    C_WrapKey,
    C_UnwrapKey,
    C_DeriveKey,
    C_SeedRandom,
    C_GenerateRandom,
    C_GetFunctionStatus,
    C_CancelFunction,
    C_WaitForSlotEvent,
}

#[cfg(test)]
mod tests {
    use super::Func;

    #[test]
    fn table_is_dense_and_round_trips() {
        assert_eq!(Func::COUNT, 68);
        for (i, f) in Func::ALL.iter().enumerate() {
            assert_eq!(f.index(), i);
            assert_eq!(Func::from_name(f.name()), Some(*f));
        }
        assert_eq!(Func::from_name("C_GetInterface"), None);
    }
}
